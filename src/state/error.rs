//! Error codes: the first word of a RESP error line and the HTTP status the
//! admin API answers with, in one table, so no front end maps strings.

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Bad syntax or a value out of bounds.
    Err,
    /// A hold, run or alert that does not exist (for this caller).
    Unknown,
    /// An id reused with other arguments.
    Exists,
    /// A hold in a state that does not allow it (committed, released).
    State,
    /// A model with no price.
    NoPrice,
    /// A scope or command outside the caller's rights.
    NoPerm,
    /// Not authenticated yet.
    NoAuth,
    /// A wrong user or password.
    WrongPass,
    /// An unsupported protocol version (HELLO).
    NoProto,
    /// Over a size limit of the front end.
    TooBig,
    /// The disk refused a write; nothing was acknowledged.
    IoErr,
    /// The server is shutting down.
    Shutdown,
    /// EXEC of a transaction that had an error while queuing.
    ExecAbort,
    /// Cluster mode: the global store could not take a definition
    /// (BUDGET.SET / DEL, PRICE.SET); nothing was applied.
    ClusterDown,
}

impl ErrorCode {
    /// The first word of the RESP error line.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Err => "ERR",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Exists => "EXISTS",
            ErrorCode::State => "STATE",
            ErrorCode::NoPrice => "NOPRICE",
            ErrorCode::NoPerm => "NOPERM",
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::WrongPass => "WRONGPASS",
            ErrorCode::NoProto => "NOPROTO",
            ErrorCode::TooBig => "TOOBIG",
            ErrorCode::IoErr => "IOERR",
            ErrorCode::Shutdown => "SHUTDOWN",
            ErrorCode::ExecAbort => "EXECABORT",
            ErrorCode::ClusterDown => "CLUSTERDOWN",
        }
    }

    /// The admin API's HTTP status for it.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unknown => 404,
            ErrorCode::Exists | ErrorCode::State => 409,
            ErrorCode::NoPerm => 403,
            ErrorCode::NoAuth | ErrorCode::WrongPass => 401,
            ErrorCode::Err | ErrorCode::NoPrice | ErrorCode::NoProto | ErrorCode::ExecAbort => 422,
            ErrorCode::TooBig => 413,
            ErrorCode::IoErr | ErrorCode::Shutdown | ErrorCode::ClusterDown => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
