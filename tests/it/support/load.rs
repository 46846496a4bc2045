//! `phx-load`, the load generator binary, as the fault tests run it.

use std::process::{Child, Command, Stdio};

/// Starts `phx-load` with the space-separated `args` (its stdout kept for [`LoadRun::wait`],
/// stderr dropped).
pub(crate) fn spawn_load(args: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_phx-load"))
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phx-load")
}

/// What one `phx-load` run printed.
pub(crate) struct LoadRun {
    pub success: bool,
    pub stdout: String,
}

impl LoadRun {
    /// Waits for `load` to end.
    pub(crate) fn wait(load: Child) -> Self {
        let out = load.wait_with_output().expect("phx-load ran");
        Self {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// The rest of the first line that starts with `prefix` ("" if there is none).
    pub(crate) fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_default()
    }

    /// The figures line: `result: name=value name=value ...`.
    pub(crate) fn result(&self) -> &str {
        self.line("result: ")
    }

    /// The `name=` figure of the result line; panics if it has none.
    pub(crate) fn figure(&self, name: &str) -> f64 {
        self.result()
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in phx-load output: {}", self.stdout))
    }
}
