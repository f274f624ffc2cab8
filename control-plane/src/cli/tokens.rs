//! `fleetml tokens create|list|revoke|rotate-admin` and `fleetml audit`: who may do what, and
//! what was done, over REST (admin tokens for the first, any token for the audit log).

use std::process::ExitCode;

use super::ClientArgs;
use super::output::print_json;
use crate::api::views::{AuditEntryView, AuditQuery, CreateToken, IssuedTokenView, TokenView};

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// Make a token; its value is printed once (stdout), its details on stderr.
    Create {
        /// viewer (reads everything), operator (changes the fleet), admin (also tokens and trust).
        #[arg(long)]
        role: String,
        /// Who or what it is for (shown in the audit log).
        #[arg(long)]
        name: Option<String>,
        /// How long it lives: 30d, 12h, 90m (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
        /// Narrow it: tracking (the MLflow API only), labels:MODEL, job:ID. Repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every token (never their values).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token now: every later request with it gets 401.
    Revoke {
        /// The token's id (`fleetml tokens list`).
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace the bootstrap admin token: the old one stops working; the new one is printed
    /// once and written to the plane's DATA_DIR/admin.token.
    RotateAdmin {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// How far back: 1h, 7d (default: everything kept).
    #[arg(long)]
    since: Option<String>,
    /// At most this many entries, oldest first.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn time(ms: Option<i64>) -> String {
    ms.map(super::output::date_time).unwrap_or_else(|| "-".into())
}

fn print_tokens(tokens: &[TokenView]) {
    println!("{:>4} {:<24} {:<9} {:<20} {:<20} {:<20} SCOPES", "ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED");
    for token in tokens {
        let name = if token.bootstrap { format!("{} (bootstrap)", token.name) } else { token.name.clone() };
        println!(
            "{:>4} {:<24} {:<9} {:<20} {:<20} {:<20} {}",
            token.id,
            name,
            token.role,
            time(Some(token.created_ms)),
            time(token.expires_ms),
            time(token.revoked_ms),
            token.scopes.join(" ")
        );
    }
}

fn print_issued(issued: &IssuedTokenView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(issued);
    }
    println!("{}", issued.token);
    eprintln!(
        "token {} `{}` ({}{}): shown once, keep it in a file or FLEETML_TOKEN",
        issued.details.id,
        issued.details.name,
        issued.details.role,
        if issued.details.scopes.is_empty() { String::new() } else { format!(", {}", issued.details.scopes.join(" ")) }
    );
    Ok(())
}

pub async fn run(command: TokensCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokensCommand::Create { role, name, expires, scopes, json, client } => {
            let request = CreateToken { name, role, scopes, expires_in: expires };
            let issued: IssuedTokenView = client.client()?.post_json("/api/v1/tokens", &request).await?;
            print_issued(&issued, json)?;
        }
        TokensCommand::List { json, client } => {
            let tokens: Vec<TokenView> = client.client()?.get("/api/v1/tokens").await?;
            if json { print_json(&tokens)? } else { print_tokens(&tokens) }
        }
        TokensCommand::Revoke { id, json, client } => {
            let token: TokenView = client.client()?.post_json(&format!("/api/v1/tokens/{id}/revoke"), &serde_json::json!({})).await?;
            if json { print_json(&token)? } else { println!("token {} `{}` revoked at {}", token.id, token.name, time(token.revoked_ms)) }
        }
        TokensCommand::RotateAdmin { json, client } => {
            let issued: IssuedTokenView = client.client()?.post_json("/api/v1/tokens/rotate-admin", &serde_json::json!({})).await?;
            print_issued(&issued, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let query = AuditQuery { since: args.since, since_ms: None, limit: Some(args.limit) };
    let entries: Vec<AuditEntryView> = args.client.client()?.get_query("/api/v1/audit", &query).await?;
    if args.json {
        print_json(&entries)?;
    } else {
        for entry in &entries {
            println!(
                "{} {} {} {} by {} from {} -> {} {}",
                time(Some(entry.at_ms)),
                entry.action,
                entry.target,
                entry.detail,
                entry.token_name,
                entry.address,
                entry.outcome,
                entry.status
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
