//! The `confab account`, `confab history` and `confab settings` commands, and opening a
//! store that may be sealed with a passphrase.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::Failure;
use crate::account::export::{self as account, AccountError, Reseal};
use crate::account::seal::{self, Cost, SealKey};
use crate::account::{Store, StoreError};

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Print the account as a JSON document (format `confab-account`, version 1) on stdout.
    Export {
        /// Put the identity secret key in the document (keep such a file safe).
        #[arg(long)]
        include_secret_key: bool,
    },
    /// Create this account from an export document (refused if an account exists).
    Import {
        /// The export file (`-` for stdin).
        file: PathBuf,
        /// Replace an existing account (it is deleted first, not merged).
        #[arg(long)]
        force: bool,
        /// Seal the imported account with a passphrase.
        #[arg(long)]
        passphrase: bool,
    },
    /// Delete the account: immediate and irreversible; nothing of it stays on disk.
    Delete {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Set, change or remove the passphrase that seals the key, profile, rooms and history.
    Passphrase {
        /// Remove the passphrase (store the records in clear).
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Remove every entry.
    #[arg(long)]
    pub clear: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Set a setting: `history-retention-days N` (0 keeps no history).
    Set { key: String, value: String },
    /// Show the settings.
    Show {
        #[arg(long)]
        json: bool,
    },
}

fn account_failure(e: AccountError) -> Failure {
    match e {
        AccountError::Store(s) => s.into(),
        AccountError::NotAnExport(_)
        | AccountError::NewerExport { .. }
        | AccountError::AccountExists(_) => Failure::input(e.to_string()),
        other => Failure::other(other),
    }
}

/// Opens the store and, if it is sealed, unlocks it with the passphrase from
/// `CONFAB_PASSPHRASE` or a prompt.
pub fn open_store(dir: &Path) -> Result<Store, Failure> {
    let store = Store::open(dir)?;
    if store.is_sealed()? {
        let p = seal::read_passphrase("passphrase: ").map_err(Failure::input)?;
        store.unlock(&p)?;
    }
    Ok(store)
}

/// `confab init --passphrase`: the key for the new store, asked for before the store is
/// created (so a refused passphrase leaves nothing behind) and installed by
/// [`Store::seal_empty`] before anything is written.
pub fn key_for_new_store() -> Result<(SealKey, seal::SealRecord), Failure> {
    let p = seal::read_new_passphrase(false).map_err(Failure::input)?;
    new_key(&p)
}

/// A key for a new passphrase; an empty one is refused (exit code 2), everywhere one is set.
fn new_key(passphrase: &str) -> Result<(SealKey, seal::SealRecord), Failure> {
    SealKey::create(passphrase, Cost::default()).map_err(|e| match e {
        seal::SealError::EmptyPassphrase => {
            Failure::input("the passphrase is empty; choose one, or leave the account unsealed")
        }
        other => Failure::other(other),
    })
}

pub fn run_account(dir: &Path, command: AccountCommand) -> Result<(), Failure> {
    match command {
        AccountCommand::Export { include_secret_key } => {
            let store = open_store(dir)?;
            let doc = account::export(&store, include_secret_key, crate::clock::now_ms())
                .map_err(account_failure)?;
            let text = serde_json::to_string_pretty(&doc).map_err(Failure::other)?;
            println!("{text}");
            if include_secret_key {
                eprintln!("note: this export holds the account's secret key in clear; whoever has the file can act as this account");
            }
            Ok(())
        }
        AccountCommand::Import {
            file,
            force,
            passphrase,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(Failure::other)?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Failure::input(format!("cannot read {}: {e}", file.display())))?
            };
            // The whole document is checked before anything is touched.
            let doc = account::parse_export(&text).map_err(account_failure)?;
            let seal = if passphrase {
                let p = seal::read_new_passphrase(false).map_err(Failure::input)?;
                Some(new_key(&p)?)
            } else {
                None
            };
            let done = account::import(dir, &doc, force, seal, crate::clock::now_ms())
                .map_err(account_failure)?;
            if done.replaced {
                eprintln!("the previous account in {} was deleted", dir.display());
            }
            if done.new_identity {
                println!(
                    "imported the data of {} into a new identity {} (the export had no secret key)",
                    doc.peer_id, done.peer_id
                );
            } else {
                println!("imported account {} into {}", done.peer_id, dir.display());
            }
            Ok(())
        }
        AccountCommand::Delete { yes } => {
            let guard = account::lock_for_delete(dir).map_err(account_failure)?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Failure::input(
                        "refusing to delete without confirmation: pass --yes (no terminal to ask on)",
                    ));
                }
                eprint!(
                    "Delete the account in {} for good? There is no undo. Type 'delete' to confirm: ",
                    dir.display()
                );
                let _ = std::io::stderr().flush();
                let mut answer = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut answer)
                    .map_err(Failure::other)?;
                if answer.trim() != "delete" {
                    return Err(Failure::input("not confirmed; nothing was deleted"));
                }
            }
            account::delete_locked(dir, guard).map_err(account_failure)?;
            println!("deleted the account in {}", dir.display());
            Ok(())
        }
        AccountCommand::Passphrase { remove } => {
            let store = open_store(dir)?;
            store.require_identity()?;
            let how = if remove {
                if !store.is_sealed()? {
                    return Err(Failure::input("the account has no passphrase"));
                }
                Reseal::Clear
            } else {
                let p = seal::read_new_passphrase(store.is_sealed()?).map_err(Failure::input)?;
                let (key, record) = new_key(&p)?;
                Reseal::New(key, record)
            };
            let sealed = matches!(how, Reseal::New(..));
            account::reseal(store, how).map_err(account_failure)?;
            if sealed {
                println!("the account is sealed with the new passphrase");
            } else {
                println!("the passphrase was removed; the account is stored in clear");
            }
            Ok(())
        }
    }
}

pub fn run_history(dir: &Path, args: HistoryArgs) -> Result<(), Failure> {
    let store = open_store(dir)?;
    if args.clear {
        let n = store.clear_history()?;
        // Rewrite the database so the removed entries do not linger in sled's log.
        account::reseal(store, Reseal::Keep).map_err(account_failure)?;
        if args.json {
            println!("{}", json!({"cleared": n}));
        } else {
            println!("cleared {n} history entries");
        }
        return Ok(());
    }
    let entries = store.history()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&entries).map_err(Failure::other)?
        );
    } else if entries.is_empty() {
        println!(
            "no calls in the history (kept for {} days)",
            store.history_retention_days()?
        );
    } else {
        println!(
            "{:<20} {:<32} {:>9}  peers",
            "start (UTC)", "room", "duration"
        );
        for e in entries {
            println!(
                "{:<20} {:<32} {:>8.0}s  {}",
                utc(e.started_ms),
                e.room_id,
                e.duration_ms as f64 / 1000.0,
                e.peers.join(", ")
            );
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn run_settings(dir: &Path, command: SettingsCommand) -> Result<(), Failure> {
    match command {
        SettingsCommand::Set { key, value } => match key.as_str() {
            "history-retention-days" => {
                let days: u32 = value.parse().map_err(|_| {
                    Failure::input("history-retention-days takes a whole number of days")
                })?;
                let store = open_store(dir)?;
                store.set_history_retention_days(days, crate::clock::now_ms())?;
                println!("history-retention-days = {days}");
                Ok(())
            }
            other => Err(Failure::input(format!(
                "unknown setting {other:?}; known: history-retention-days"
            ))),
        },
        SettingsCommand::Show { json } => {
            let store = Store::open(dir)?;
            let days = store.history_retention_days()?;
            let sealed = store.is_sealed()?;
            if json {
                println!(
                    "{}",
                    json!({"history_retention_days": days, "sealed": sealed})
                );
            } else {
                println!("history-retention-days = {days}\nsealed with a passphrase = {sealed}");
            }
            Ok(())
        }
    }
}

/// The lines `confab call` prints about members who recorded the call.
pub fn recording_notice(report: &crate::call::CallReport) -> Vec<String> {
    report
        .received
        .iter()
        .filter(|s| s.recording)
        .map(|s| {
            if s.name.is_empty() {
                format!("⚠ {} is recording this call", s.from)
            } else {
                format!("⚠ {} ({}) is recording this call", s.name, s.from)
            }
        })
        .collect()
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongPassphrase(_) | StoreError::PassphraseRequired(_) => {
                Failure::input(e.to_string())
            }
            other => Failure::other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
