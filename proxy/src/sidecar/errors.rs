//! Client errors as the S3 errors that S3 clients know how to handle.

use crate::client::ClientError;
use s3s::{S3Error, S3ErrorCode, s3_error};

pub fn map_err(e: ClientError) -> S3Error {
    match &e {
        ClientError::RangeNotSatisfiable(m) => s3_error!(InvalidRange, "{m}"),
        ClientError::Rejected { status: 401 | 403, message } => {
            s3_error!(AccessDenied, "the proxies refused the volume token: {message}")
        }
        ClientError::Rejected { status: 413, message } => s3_error!(EntityTooLarge, "{message}"),
        ClientError::Rejected { status: 400, message } => s3_error!(InvalidArgument, "{message}"),
        ClientError::Rejected { message, .. } => s3_error!(InvalidRequest, "{message}"),
        ClientError::NoSuchUpload(m) => s3_error!(NoSuchUpload, "{m}"),
        ClientError::Unreachable { .. } | ClientError::Stale { .. } => {
            S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
        }
        // The object was replaced while it was read: S3 clients retry a 503, and the retry reads
        // the new version whole.
        ClientError::Changed { .. } => S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string()),
        // S3's answer to a write that lost to a concurrent one on the same key.
        ClientError::Superseded { .. } => S3Error::with_message(S3ErrorCode::OperationAborted, e.to_string()),
        _ => S3Error::with_message(S3ErrorCode::InternalError, e.to_string()),
    }
}
