//! `ringcast ctl`: manages WebRocket vhosts, users, channels and worker
//! tokens through the admin API (docs/admin.md); `ctl monitor` shows the
//! live view (docs/metrics.md). Exit 0 on success; else one
//! line on stderr and exit 1.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The gateway's API address.
    #[arg(long, env = "RINGCAST_API", default_value = "http://127.0.0.1:8081", global = true)]
    api: String,
    /// The admin token (server.admin_token).
    #[arg(long, env = "RINGCAST_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// List commands print a JSON array.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// WebRocket vhosts.
    #[command(subcommand)]
    Vhost(VhostCmd),
    /// Users of a vhost.
    #[command(subcommand)]
    User(UserCmd),
    /// Channels of a vhost.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// The live view of the dashboard in the terminal (Ctrl-C ends it).
    Monitor {
        /// Print one snapshot and exit (text; with --json, the JSON of `GET /stats`).
        #[arg(long)]
        once: bool,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
        interval_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum VhostCmd {
    List,
    /// Adds a vhost speaking webrocket; it serves at once on every shard.
    Add {
        path: String,
        /// Rights of unauthenticated sessions, e.g. READ,WRITE.
        #[arg(long, default_value = "")]
        anonymous: String,
    },
    /// Deletes a vhost added at run time; its sessions and workers are closed.
    Delete {
        path: String,
    },
    /// Prints the vhost's worker access token.
    Token {
        path: String,
        /// Replace it; workers holding the old one are disconnected.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Args, Debug)]
struct UserFields {
    path: String,
    name: String,
    /// The user's secret (empty: any secret is accepted).
    #[arg(long, conflicts_with = "secret_stdin")]
    secret: Option<String>,
    /// Read the secret from the first line of stdin (keeps it out of `ps`).
    #[arg(long)]
    secret_stdin: bool,
    /// READ, WRITE and/or MANAGE, comma-separated.
    #[arg(long)]
    permissions: Option<String>,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    List {
        path: String,
    },
    /// Adds a user (no permissions unless given).
    Add(UserFields),
    /// Changes a user's secret or permissions; live sessions follow at once.
    Set(UserFields),
    /// Deletes a user; its live sessions are logged out.
    Delete {
        path: String,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ChannelCmd {
    /// Channels with their subscriber counts.
    List {
        path: String,
    },
    Add {
        path: String,
        name: String,
    },
    /// Deletes a channel; its subscribers are dropped from it.
    Delete {
        path: String,
        name: String,
    },
}

/// Why a `ringcast ctl` command failed.
#[derive(Debug)]
pub enum CtlError {
    /// An admin route without `--token`.
    NoToken,
    /// The API could not be reached (`which`: "API" or "admin API").
    Unreachable {
        which: &'static str,
        api: String,
        reason: String,
    },
    /// The gateway answered with an error status and this text.
    Refused {
        status: u16,
        why: String,
    },
    /// An answer that could not be read.
    Answer {
        url: String,
        reason: String,
    },
    Stdin(std::io::Error),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::NoToken => f.write_str("no admin token: pass --token or set RINGCAST_ADMIN_TOKEN"),
            CtlError::Unreachable { which, api, reason } => {
                write!(f, "cannot reach the {which} at {api}: {reason}")
            }
            CtlError::Refused { status, why } => write!(f, "{why} (HTTP {status})"),
            CtlError::Answer { url, reason } => write!(f, "unexpected answer from {url}: {reason}"),
            CtlError::Stdin(e) => write!(f, "cannot read the secret from stdin: {e}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// Runs a ctl command; the error is the one line to print.
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let client = Client { api: args.api.trim_end_matches('/').to_string(), token: args.token };
    let json_out = args.json;
    match args.command {
        CtlCommand::Vhost(VhostCmd::List) => {
            let all = client.call("GET", "/admin/vhosts", &[], None)?;
            print_list(&all, json_out, &["path", "anonymous", "users", "channels", "workers"]);
        }
        CtlCommand::Vhost(VhostCmd::Add { path, anonymous }) => {
            let anonymous: Vec<&str> = anonymous.split(',').filter(|s| !s.trim().is_empty()).collect();
            client.call(
                "POST",
                "/admin/vhosts",
                &[],
                Some(json!({ "path": path, "anonymous": anonymous })),
            )?;
        }
        CtlCommand::Vhost(VhostCmd::Delete { path }) => {
            client.call("DELETE", "/admin/vhosts", &[("vhost", &path)], None)?;
        }
        CtlCommand::Vhost(VhostCmd::Token { path, rotate }) => {
            let method = if rotate { "POST" } else { "GET" };
            let answer = client.call(method, "/admin/token", &[("vhost", &path)], None)?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
        }
        CtlCommand::User(UserCmd::List { path }) => {
            let all = client.call("GET", "/admin/users", &[("vhost", &path)], None)?;
            print_list(&all, json_out, &["name", "permissions", "secret"]);
        }
        CtlCommand::User(UserCmd::Add(f)) => {
            client.call("POST", "/admin/users", &[], Some(user_body(f)?))?;
        }
        CtlCommand::User(UserCmd::Set(f)) => {
            client.call("PATCH", "/admin/users", &[], Some(user_body(f)?))?;
        }
        CtlCommand::User(UserCmd::Delete { path, name }) => {
            client.call("DELETE", "/admin/users", &[("vhost", &path), ("name", &name)], None)?;
        }
        CtlCommand::Channel(ChannelCmd::List { path }) => {
            let all = client.call("GET", "/admin/channels", &[("vhost", &path)], None)?;
            print_list(&all, json_out, &["name", "subscribers"]);
        }
        CtlCommand::Channel(ChannelCmd::Add { path, name }) => {
            client.call("POST", "/admin/channels", &[], Some(json!({ "vhost": path, "name": name })))?;
        }
        CtlCommand::Channel(ChannelCmd::Delete { path, name }) => {
            client.call("DELETE", "/admin/channels", &[("vhost", &path), ("name", &name)], None)?;
        }
        CtlCommand::Monitor { once, interval_ms } => monitor(&client, once, json_out, interval_ms)?,
    }
    Ok(())
}

fn monitor(client: &Client, once: bool, json_out: bool, interval_ms: u64) -> Result<(), CtlError> {
    use crate::snapshot::Snapshot;
    let fetch = || -> Result<Snapshot, CtlError> {
        let v = client.call("GET", "/stats", &[], None)?;
        serde_json::from_value(v)
            .map_err(|e| CtlError::Answer { url: "/stats (another version?)".into(), reason: e.to_string() })
    };
    if once {
        let s = fetch()?;
        if json_out {
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
        } else {
            print!("{}", crate::monitor::render(&s));
        }
        return Ok(());
    }
    let mut previous: Option<Snapshot> = None;
    loop {
        let mut s = fetch()?;
        if let Some(p) = &previous {
            s.rates = Some(s.rates_since(p));
        }
        if json_out {
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
        } else {
            // Home, draw, clear what the previous screen left below.
            print!("\x1b[H\x1b[2J{}", crate::monitor::render(&s));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        previous = Some(s);
        std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    }
}

fn user_body(f: UserFields) -> Result<Value, CtlError> {
    let secret = if f.secret_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(CtlError::Stdin)?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    } else {
        f.secret
    };
    let mut body = json!({ "vhost": f.path, "name": f.name });
    if let Some(s) = secret {
        body["secret"] = json!(s);
    }
    if let Some(p) = f.permissions {
        let names: Vec<&str> = p.split(',').filter(|s| !s.trim().is_empty()).collect();
        body["permissions"] = json!(names);
    }
    Ok(body)
}

/// Prints a list as a JSON array or as aligned columns.
fn print_list(all: &Value, as_json: bool, columns: &[&str]) {
    let rows = all.as_array().cloned().unwrap_or_default();
    if as_json {
        println!("{}", Value::Array(rows));
        return;
    }
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = std::iter::once(columns.iter().map(|c| c.to_uppercase()).collect())
        .chain(rows.iter().map(|r| columns.iter().map(|c| cell(&r[*c])).collect()))
        .collect();
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

struct Client {
    api: String,
    token: Option<String>,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        // The operator routes need it only when the gateway has one set.
        let token = match (self.token.as_deref(), path.starts_with("/admin/")) {
            (None, true) => return Err(CtlError::NoToken),
            (token, _) => token,
        };
        let mut url = format!("{}{path}", self.api);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish());
        }
        let mut request = ureq::request(method, &url).timeout(std::time::Duration::from_secs(30));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(b) => request.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let answer =
                    |e: &dyn std::fmt::Display| CtlError::Answer { url: url.clone(), reason: e.to_string() };
                let text = response.into_string().map_err(|e| answer(&e))?;
                serde_json::from_str(&text).map_err(|e| answer(&e))
            }
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let why = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Err(CtlError::Refused { status, why })
            }
            Err(e) => {
                let which = if path.starts_with("/admin/") { "admin API" } else { "API" };
                Err(CtlError::Unreachable { which, api: self.api.clone(), reason: e.to_string() })
            }
        }
    }
}
