//! The errno an application sees for each failure (docs/SEMANTICS.md).

use super::inodes::BadName;
use super::writer::WriteError;
use crate::client::ClientError;
use fuser::Errno;

pub fn client(e: &ClientError) -> Errno {
    match e {
        ClientError::Rejected { status: 404, .. } => Errno::ENOENT,
        ClientError::Rejected { status: 400, .. } | ClientError::RangeNotSatisfiable(_) => Errno::EINVAL,
        ClientError::Rejected { status: 401 | 403, .. } => Errno::EACCES,
        ClientError::Rejected { status: 413, .. } => Errno::EFBIG,
        // Unreachable proxies, a changed object, a stale copy, a lost race: the operation did not
        // happen, and retrying may work.
        _ => Errno::EIO,
    }
}

pub fn write(e: &WriteError) -> Errno {
    match e {
        WriteError::NotSequential { .. } => Errno::EINVAL,
        WriteError::TooLarge { .. } => Errno::EFBIG,
        WriteError::Closed | WriteError::Task(_) => Errno::EIO,
        WriteError::Client(c) => client(c),
    }
}

pub fn name(e: &BadName) -> Errno {
    match e {
        BadName::NotUtf8 => Errno::EINVAL,
        BadName::TooLong => Errno::ENAMETOOLONG,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_documented_errnos() {
        let rejected = |status| ClientError::Rejected { status, message: String::new() };
        assert_eq!(client(&rejected(404)), Errno::ENOENT);
        assert_eq!(client(&rejected(400)), Errno::EINVAL);
        assert_eq!(client(&rejected(413)), Errno::EFBIG);
        assert_eq!(client(&ClientError::Changed { key: "k".into() }), Errno::EIO);
        assert_eq!(write(&WriteError::NotSequential { offset: 1, end: 0 }), Errno::EINVAL);
        assert_eq!(name(&BadName::TooLong), Errno::ENAMETOOLONG);
    }
}
