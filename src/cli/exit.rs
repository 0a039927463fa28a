//! The process exit codes of every subcommand, in one place (the README's exit-code tables and
//! each subcommand's `--help` document them).

/// How a subcommand ends. The numbers are an interface: scripts act on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// `pull`: every required image is present; `nodes`: listed, or (`--wait`) every selected
    /// node warm; `status`: the agent answered; `check`: the config is valid; `images`: the
    /// list was printed.
    Ok = 0,
    /// `pull`: some required image is not present (failed, timed out, interrupted); `nodes
    /// --wait`: some node still cold at `--timeout`, or none selected; `status`: the agent's
    /// answer could not be used; `check`: the config is invalid; `images`: no images found.
    Failed = 1,
    /// Bad usage or an invalid config (clap's own code for usage errors); `nodes`: no cluster
    /// configured; `images`: input that cannot be read or is invalid.
    Usage = 2,
    /// What the command works through did not answer or refused: the container runtime
    /// (`pull`), the Kubernetes API (`nodes`).
    Unavailable = 3,
    /// `status`: the agent's socket (or `--addr`) cannot be reached, or the agent went away
    /// while watching. Not 3: a script can tell "no agent here" from "no runtime here".
    AgentUnreachable = 4,
    /// A second SIGINT/SIGTERM: exit at once, as a shell reports an interrupted command.
    Aborted = 130,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn the_documented_numbers() {
        let codes = [
            ExitCode::Ok,
            ExitCode::Failed,
            ExitCode::Usage,
            ExitCode::Unavailable,
            ExitCode::AgentUnreachable,
            ExitCode::Aborted,
        ];
        assert_eq!(codes.map(ExitCode::code), [0, 1, 2, 3, 4, 130]);
        // clap exits with 2 on a usage error; `Cli::parse()` relies on it.
        let usage = clap::Error::raw(clap::error::ErrorKind::InvalidValue, "");
        assert_eq!(i32::from(ExitCode::Usage.code()), usage.exit_code());
    }
}
