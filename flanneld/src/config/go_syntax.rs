//! flannel's flag syntax, which is Go's: single-dash long flags (`-etcd-prefix=/x`), rewritten
//! for clap by [`Opts::parse_args`], and Go-style durations (`24h`, `1h30m`).

use std::ffi::OsString;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::{MIN_SUBNET_LEASE_TTL, Opts};

impl Opts {
    /// Parses `args` (the first item is the program name) after rewriting Go-style
    /// single-dash long flags (`-etcd-prefix=/x`) into `--etcd-prefix=/x`.
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Self::try_parse_from(normalize_go_flags(args))
    }
}

/// Rewrites `-long-flag[=v]` into `--long-flag[=v]` for flanneld's own long flags.
fn normalize_go_flags<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = Opts::command();
    let longs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .chain(["help".to_string(), "version".to_string()])
        .collect();
    let mut after_double_dash = false;
    args.into_iter()
        .map(Into::into)
        .map(|arg| {
            if after_double_dash {
                return arg;
            }
            let Some(s) = arg.to_str() else { return arg };
            if s == "--" {
                after_double_dash = true;
                return arg;
            }
            if let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) {
                let name = rest.split('=').next().unwrap_or(rest);
                if longs.iter().any(|l| l == name) {
                    return OsString::from(format!("-{s}"));
                }
            }
            arg
        })
        .collect()
}

pub(super) fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_SUBNET_LEASE_TTL {
        return Err(format!(
            "{s:?} is too short: the minimum is {}s",
            MIN_SUBNET_LEASE_TTL.as_secs()
        ));
    }
    // etcd's maximum lease TTL is 9e9 s; stay well below it.
    if d > Duration::from_secs(10 * 365 * 24 * 3600) {
        return Err(format!("{s:?} is too long: the maximum is 10 years"));
    }
    Ok(d)
}

/// Parses a Go-style duration of whole units: `90s`, `15m`, `24h`, `1h30m`, `2d`; a bare
/// number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("{s:?}: {e}"));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' if chars.peek() == Some(&'s') => {
                return Err(format!("{s:?}: sub-second units are not supported"));
            }
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use d, h, m or s)")),
        };
        if num.is_empty() {
            return Err(format!("{s:?}: unit {c:?} without a number"));
        }
        let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too large"))?;
    }
    if !num.is_empty() {
        return Err(format!("{s:?}: trailing number without a unit"));
    }
    Ok(Duration::from_secs(total))
}
