//! `confab-relay bench`: the relay's cost per relayed audio stream.

use crate::{cli::BenchArgs, Error};

/// Run the benchmark and print a table.
pub async fn run(_args: BenchArgs) -> Result<(), Error> {
    Err(Error::Bench("not yet".into()))
}
