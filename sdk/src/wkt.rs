//! Well-known types with a JSON mapping of our own.
//!
//! `google.protobuf.Timestamp` is generated as [`Timestamp`] instead of
//! `pbjson_types::Timestamp`, whose JSON uses `+00:00` where proto3 JSON
//! requires `Z`, and which accepts forms the published schema rejects
//! (lowercase `t`/`z`, a space separator). Our decoder accepts exactly the
//! schema's pattern.

use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};

/// Earliest valid timestamp (0001-01-01T00:00:00Z), in seconds.
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// Latest valid timestamp (9999-12-31T23:59:59Z), in seconds.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// A point in time: seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
#[prost(skip_debug)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fraction of a second, in nanoseconds (0..=999,999,999).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Utc::now().into()
    }

    /// RFC 3339 text with `Z` and 0, 3, 6 or 9 fractional digits; `None` when
    /// out of range.
    pub fn to_rfc3339(&self) -> Option<String> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds)
            || !(0..1_000_000_000).contains(&self.nanos)
        {
            return None;
        }
        let dt = DateTime::<Utc>::from_timestamp(self.seconds, self.nanos as u32)?;
        Some(dt.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    /// Parses RFC 3339 text as the schema's pattern allows it.
    pub fn parse(text: &str) -> Result<Self, String> {
        static RE: OnceLock<regex::Regex> = OnceLock::new();
        let re = RE.get_or_init(|| regex::Regex::new(TIMESTAMP_PATTERN).expect("static regex"));
        if !re.is_match(text) {
            return Err(format!(
                "`{text}` is not an RFC 3339 timestamp (YYYY-MM-DDThh:mm:ss[.f]Z or ±hh:mm offset)"
            ));
        }
        let dt = DateTime::parse_from_rfc3339(text).map_err(|e| format!("`{text}`: {e}"))?;
        let ts: Timestamp = dt.with_timezone(&Utc).into();
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
            return Err(format!("`{text}` is outside 0001-01-01..9999-12-31"));
        }
        Ok(ts)
    }
}

include!(concat!(env!("OUT_DIR"), "/patterns.rs"));

impl From<DateTime<Utc>> for Timestamp {
    fn from(dt: DateTime<Utc>) -> Self {
        Timestamp {
            seconds: dt.timestamp(),
            nanos: dt.timestamp_subsec_nanos().min(999_999_999) as i32,
        }
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_rfc3339() {
            Some(s) => write!(f, "Timestamp({s})"),
            None => write!(f, "Timestamp({}s, {}ns)", self.seconds, self.nanos),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.to_rfc3339().ok_or_else(|| {
            serde::ser::Error::custom(format!(
                "timestamp {}s {}ns out of range",
                self.seconds, self.nanos
            ))
        })?;
        s.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_z_and_grouped_fractions() {
        let t = Timestamp {
            seconds: 0,
            nanos: 1_000_000,
        };
        assert_eq!(t.to_rfc3339().as_deref(), Some("1970-01-01T00:00:00.001Z"));
        assert_eq!(
            Timestamp {
                seconds: 0,
                nanos: 0
            }
            .to_rfc3339()
            .as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
    }

    #[test]
    fn parses_offsets_and_rejects_lenient_forms() {
        assert_eq!(
            Timestamp::parse("1970-01-01T01:00:00+01:00"),
            Ok(Timestamp {
                seconds: 0,
                nanos: 0
            })
        );
        for bad in [
            "1970-01-01t00:00:00z",
            "1970-01-01 00:00:00Z",
            "1970-02-30T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Timestamp {
                seconds: MAX_SECONDS + 1,
                nanos: 0
            }
            .to_rfc3339()
            .is_none()
        );
    }
}
