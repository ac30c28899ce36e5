//! Processes started inside the testbed's namespaces: spawn with `ip netns exec`, read stdout
//! line by line, wait with a deadline, signal by pid.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::netns::{signal, Net};

/// One child process running in a namespace.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    lines: Receiver<String>,
    exit: Receiver<Option<ExitStatus>>,
    status: Option<Option<ExitStatus>>,
    reader: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
}

impl Proc {
    /// Starts `program args` in namespace `ns` (or in ours if `ns` is `None`); stderr goes to
    /// `log`, stdout is read line by line.
    pub fn spawn(
        net: &Net,
        name: &str,
        ns: Option<&str>,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<Proc> {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.args(args)
            .env_remove("CONFAB_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?,
            ));
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child.id();
        net.track(pid);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (ltx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if ltx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, exit) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = etx.send(child.wait().ok());
        });
        Ok(Proc {
            name: name.to_string(),
            pid,
            lines,
            exit,
            status: None,
            reader: Some(reader),
            waiter: Some(waiter),
        })
    }

    /// Waits for a stdout line for which `want` returns `Some`, up to `timeout`. Lines before
    /// it are passed to `seen`.
    pub fn wait_line<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(t) = want(&line) {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{} printed nothing expected within {timeout:?}", self.name)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.wait_exit(Duration::from_secs(5));
                    bail!("{} exited before it was ready ({st:?})", self.name)
                }
            }
        }
    }

    /// Waits for the process to end, up to `timeout`; kills it after that. Returns its
    /// status (`None` if it had to be killed or could not be waited for).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.status {
            return st;
        }
        let st = match self.exit.recv_timeout(timeout) {
            Ok(st) => st,
            Err(_) => {
                signal(self.pid, "KILL");
                let _ = self.exit.recv_timeout(Duration::from_secs(5));
                None
            }
        };
        self.status = Some(st);
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
        st
    }

    /// Asks the process to stop (SIGTERM), waits up to `timeout`, then kills it.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            signal(self.pid, "TERM");
        }
        self.wait_exit(timeout)
    }

    /// Everything left on stdout, once the process has ended.
    pub fn rest_of_stdout(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut out = String::new();
        while let Ok(line) = self.lines.try_recv() {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Whether it has ended.
    pub fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.exit.try_recv() {
            Ok(st) => {
                self.status = Some(st);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited() {
            signal(self.pid, "KILL");
            let _ = self.exit.recv_timeout(Duration::from_secs(5));
        }
    }
}
