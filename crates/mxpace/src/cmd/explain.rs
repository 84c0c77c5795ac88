//! `mxpace explain`: what an SMTP reply means and what to do about it.
//!
//! Exit codes: 0 every input was an SMTP reply, 1 some input was not one, 2 error.

use anyhow::Context;
use mxpace_reply::{Engine, RuleDef, Verdict};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `mxpace explain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Replies to explain (quote each one). With none, replies are read from stdin:
    /// one per line, or multi-line replies separated by blank lines.
    pub replies: Vec<String>,
    /// Print one JSON object per reply (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The receiving MX host, to recognise the provider (e.g. contoso-com.mail.protection.outlook.com).
    #[arg(long, value_name = "HOST")]
    pub mx: Option<String>,
    /// A TOML file of extra rules; a rule with a built-in rule's id replaces it.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Print the rules in the order they are tried, with their sources, and exit.
    #[arg(long)]
    pub list_rules: bool,
}

/// Explain the given replies (or stdin's), or list the rules.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let owned;
    let engine: &Engine = match &args.rules {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading rules file {}", path.display()))?;
            owned = Engine::with_user_rules(&path.display().to_string(), &text)
                .context("loading rules")?;
            &owned
        }
        None => mxpace_reply::embedded_engine(),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.list_rules {
        for rule in engine.rules() {
            write_rule(&mut out, rule, args.json)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let replies = if args.replies.is_empty() {
        let mut input = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut input)
            .context("reading stdin")?;
        split_replies(&String::from_utf8_lossy(&input))
    } else {
        args.replies.clone()
    };
    let mut all_replies = true;
    for (i, reply) in replies.iter().enumerate() {
        let verdict = engine.explain(reply, args.mx.as_deref());
        all_replies &= !verdict.not_a_reply;
        if args.json {
            serde_json::to_writer(&mut out, &verdict)?;
            writeln!(out)?;
        } else {
            if i > 0 {
                writeln!(out)?;
            }
            write_human(&mut out, &verdict)?;
        }
    }
    out.flush()?;
    Ok(if all_replies {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Split stdin into replies. A reply is one line, except that a line continues the
/// previous one when that line was a multi-line continuation (`NNN-…`) or when it
/// starts with whitespace (a folded header). Blank lines always separate replies.
pub fn split_replies(input: &str) -> Vec<String> {
    let mut replies = Vec::new();
    let mut current = String::new();
    let mut continues = false;
    for line in input.lines().flat_map(|l| l.split('\r')) {
        if line.trim().is_empty() {
            if !current.is_empty() {
                replies.push(std::mem::take(&mut current));
            }
            continues = false;
            continue;
        }
        let folded = line.starts_with([' ', '\t']);
        if !(current.is_empty() || continues || folded) {
            replies.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        let b = line.as_bytes();
        continues = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b'-';
    }
    if !current.is_empty() {
        replies.push(current);
    }
    replies
}

fn write_human(out: &mut impl Write, v: &Verdict) -> io::Result<()> {
    if v.not_a_reply {
        writeln!(out, "not an SMTP reply: {}", v.text)?;
        return writeln!(out, "  {}", v.advice);
    }
    let code = v.code.map(|c| c.to_string()).unwrap_or_default();
    let enhanced = v.enhanced.as_deref().unwrap_or("-");
    writeln!(
        out,
        "{code} {enhanced}  {}  {} / {}  provider {}  throttle {}{}",
        name(&v.action).to_uppercase(),
        name(&v.category),
        name(&v.scope),
        v.provider,
        name(&v.throttle),
        if v.enhanced_agrees == Some(false) {
            "  (enhanced code disagrees with the basic code)"
        } else {
            ""
        }
    )?;
    writeln!(out, "  {}", v.advice)?;
    let mut facts = Vec::new();
    if let Some(stage) = &v.stage {
        facts.push(format!("stage {}", name(stage)));
    }
    if !v.tokens.is_empty() {
        facts.push(format!("tokens {}", v.tokens.join(" ")));
    }
    if !v.ips.is_empty() {
        let ips: Vec<String> = v.ips.iter().map(ToString::to_string).collect();
        facts.push(format!("ips {}", ips.join(" ")));
    }
    if let Some(host) = &v.host {
        match &v.host_time {
            Some(t) => facts.push(format!("host {host} at {t}")),
            None => facts.push(format!("host {host}")),
        }
    }
    if !v.urls.is_empty() {
        facts.push(format!("urls {}", v.urls.join(" ")));
    }
    if !facts.is_empty() {
        writeln!(out, "  {}", facts.join("; "))?;
    }
    writeln!(
        out,
        "  rule {}{}",
        v.rule,
        if v.fallback {
            " (fallback: only the status code decided)"
        } else {
            ""
        }
    )
}

fn write_rule(out: &mut impl Write, r: &RuleDef, json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut when = Vec::new();
    if let Some(p) = &r.provider {
        when.push(format!("provider={p}"));
    }
    if !r.codes.is_empty() {
        when.push(format!("code={}", r.codes.join("|")));
    }
    if !r.enhanced.is_empty() {
        when.push(format!("enhanced={}", r.enhanced.join("|")));
    }
    if !r.all.is_empty() {
        when.push(format!("all={:?}", r.all));
    }
    if !r.any.is_empty() {
        when.push(format!("any={:?}", r.any));
    }
    if !r.not.is_empty() {
        when.push(format!("not={:?}", r.not));
    }
    let action = r.action.map_or("by-code".to_owned(), |a| name(&a));
    writeln!(
        out,
        "{}{}\n  when {}\n  then {action} {} / {} throttle {}\n  source: {}",
        r.id,
        if r.fallback { " (fallback)" } else { "" },
        if when.is_empty() {
            "always".into()
        } else {
            when.join(" ")
        },
        name(&r.category),
        name(&r.scope),
        name(&r.throttle),
        r.source
    )?;
    Ok(())
}

/// The JSON (kebab-case) name of a verdict enum, so text and JSON output agree.
fn name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::split_replies;

    #[test]
    fn one_per_line_and_multiline_blocks() {
        let input = "451 4.7.500 Server busy\n550 5.1.1 unknown\n\n550-5.7.26 first\n550-5.7.26 second\n550 5.7.26 last\n\nDiagnostic-Code: smtp; 550 5.7.1 a\n    folded\n";
        let r = split_replies(input);
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r[2], "550-5.7.26 first\n550-5.7.26 second\n550 5.7.26 last");
        assert_eq!(r[3], "Diagnostic-Code: smtp; 550 5.7.1 a\n    folded");
        assert_eq!(split_replies("a\r\nb\r\n").len(), 2);
        assert!(split_replies("\n\n  \n").is_empty());
    }
}
