//! Conditional reads (RFC 9110 section 13 as S3 applies it): `If-Match`, `If-None-Match`,
//! `If-Modified-Since` and `If-Unmodified-Since` on GET and HEAD, and their `x-amz-copy-source-*`
//! twins on copies.

use s3s::dto::{ETagCondition, Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode};
use std::time::SystemTime;

/// The conditions of one request.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<Timestamp>,
    pub if_unmodified_since: Option<Timestamp>,
}

/// HTTP dates have whole seconds: compare at that precision, as S3 does.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn to_system_time(t: &Timestamp) -> Option<SystemTime> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    httpdate::parse_http_date(std::str::from_utf8(&buf).ok()?).ok()
}

fn matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.trim_matches('"'),
    }
}

impl Conditions {
    /// `Ok` to serve the object (with ETag `etag`, modified at `modified`); otherwise
    /// `412 PreconditionFailed`, or `304 NotModified` (`not_modified_is_error`: a copy's source
    /// answers 412 for both, as S3 does).
    pub fn check(&self, etag: &str, modified: SystemTime, not_modified_is_error: bool) -> Result<(), S3Error> {
        let failed = || {
            S3Error::with_message(
                S3ErrorCode::PreconditionFailed,
                "At least one of the preconditions you specified did not hold",
            )
        };
        let not_modified = || {
            if not_modified_is_error { failed() } else { S3Error::new(S3ErrorCode::NotModified) }
        };
        let m = secs(modified);
        // If-Match wins over If-Unmodified-Since when both are present (S3's documented rule).
        match &self.if_match {
            Some(c) if !matches(c, etag) => return Err(failed()),
            Some(_) => {}
            None => {
                if let Some(t) = self.if_unmodified_since.as_ref().and_then(to_system_time)
                    && m > secs(t)
                {
                    return Err(failed());
                }
            }
        }
        // If-None-Match wins over If-Modified-Since.
        match &self.if_none_match {
            Some(c) if matches(c, etag) => return Err(not_modified()),
            Some(_) => {}
            None => {
                if let Some(t) = self.if_modified_since.as_ref().and_then(to_system_time)
                    && m <= secs(t)
                {
                    return Err(not_modified());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn etag(v: &str) -> Option<ETagCondition> {
        Some(ETagCondition::ETag(ETag::Strong(v.into())))
    }

    fn code(r: Result<(), S3Error>) -> Option<String> {
        r.err().map(|e| e.code().as_str().to_owned())
    }

    #[test]
    fn etag_conditions() {
        let c = Conditions { if_match: etag("abc"), ..Default::default() };
        assert_eq!(code(c.check("\"abc\"", at(10), false)), None);
        assert_eq!(code(c.check("\"xyz\"", at(10), false)).as_deref(), Some("PreconditionFailed"));
        let c = Conditions { if_none_match: etag("abc"), ..Default::default() };
        assert_eq!(code(c.check("\"abc\"", at(10), false)).as_deref(), Some("NotModified"));
        assert_eq!(code(c.check("\"abc\"", at(10), true)).as_deref(), Some("PreconditionFailed"));
        assert_eq!(code(c.check("\"xyz\"", at(10), false)), None);
        let any = Conditions { if_none_match: Some(ETagCondition::Any), ..Default::default() };
        assert_eq!(code(any.check("\"x\"", at(10), false)).as_deref(), Some("NotModified"));
    }

    #[test]
    fn date_conditions_and_their_precedence() {
        let since = |s| Some(Timestamp::from(at(s)));
        let c = Conditions { if_modified_since: since(100), ..Default::default() };
        assert_eq!(code(c.check("\"e\"", at(100), false)).as_deref(), Some("NotModified"));
        assert_eq!(code(c.check("\"e\"", at(101), false)), None);
        let c = Conditions { if_unmodified_since: since(100), ..Default::default() };
        assert_eq!(code(c.check("\"e\"", at(101), false)).as_deref(), Some("PreconditionFailed"));
        assert_eq!(code(c.check("\"e\"", at(100), false)), None);
        // If-Match true overrides a failing If-Unmodified-Since; If-None-Match false overrides
        // a not-modified If-Modified-Since.
        let c = Conditions { if_match: etag("e"), if_unmodified_since: since(1), ..Default::default() };
        assert_eq!(code(c.check("\"e\"", at(100), false)), None);
        let c = Conditions { if_none_match: etag("other"), if_modified_since: since(1000), ..Default::default() };
        assert_eq!(code(c.check("\"e\"", at(100), false)), None);
    }
}
