//! keel's exit codes, in one place: every command returns an [`Exit`], and only [`crate::run`]
//! turns it into the process's code.

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: done; nothing wrong found.
    Ok,
    /// 1: the command ran and found a problem: drift, a failed verification, a stale lock, a
    /// node that will not run the lock, corrupt checkpoints, a failed training step.
    Found,
    /// 2: bad usage or bad input, or an error that kept the command from doing its job.
    BadInput,
    /// 128 + N: `keel train` stopped by signal N (SIGINT 130, SIGTERM 143) after saving.
    Signal(i32),
}

impl Exit {
    /// The process exit status.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Found => 1,
            Self::BadInput => 2,
            Self::Signal(signal) => u8::try_from((128 + signal).clamp(0, 255)).unwrap_or(255),
        }
    }

    /// The exit whose status is `code` (as ranks agree on one by its number).
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Ok,
            1 => Self::Found,
            129..=255 => Self::Signal(i32::from(code) - 128),
            _ => Self::BadInput,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_documented_ones_and_round_trip() {
        let cases = [
            (Exit::Ok, 0),
            (Exit::Found, 1),
            (Exit::BadInput, 2),
            (Exit::Signal(2), 130),
            (Exit::Signal(15), 143),
        ];
        for (exit, code) in cases {
            assert_eq!(exit.code(), code, "{exit:?}");
            assert_eq!(Exit::from_code(code), exit);
        }
    }
}
