//! `fleetctl token`: API tokens and their roles.

use clap::Subcommand;
use fleet_api::client::encode_component;
use fleet_api::units::FromNow;
use fleet_api::{Role, Token, TokenRequest, TokenResponse};

use crate::client::{print_json, Client, Failure};
use crate::show::{self, table, utc};

#[derive(Debug, Subcommand)]
pub enum TokenVerb {
    /// Create a token; its secret is printed once (example: fleetctl token create ci --role operator --expires 90d).
    Create {
        /// Token name (audit entries carry it).
        name: String,
        /// viewer (reads), operator (changes the fleet), admin (also devices' identities, tokens, backups).
        #[arg(long)]
        role: Role,
        /// When it stops working: a duration (90d) or a UTC time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (names and roles; never secrets).
    Ls,
    /// Revoke a token (example: fleetctl token revoke ci).
    Revoke {
        /// Token name.
        name: String,
    },
}

pub fn token(json: bool, client: &Client, verb: &TokenVerb) -> Result<(), Failure> {
    match verb {
        TokenVerb::Create { name, role, expires } => {
            let expires_at = expires
                .as_deref()
                .map(|e| show::parse_time("--expires", e, FromNow::Ahead))
                .transpose()
                .map_err(Failure::usage)?;
            let request = TokenRequest {
                name: name.clone(),
                role: *role,
                expires_at: expires_at.map(|e| e.0),
            };
            let t: TokenResponse = client.post("/api/v1/tokens", &request)?;
            if json {
                print_json(&t);
            } else {
                println!("{}", t.token);
                eprintln!("token {name} ({role}) created; this is the only time its secret is shown (use it as FLEET_TOKEN or `fleetctl login --token`)");
            }
        }
        TokenVerb::Ls => {
            let all: Vec<Token> = client.get("/api/v1/tokens")?;
            if json {
                print_json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|t| {
                        let state = if t.revoked_at.is_some() {
                            "revoked".to_owned()
                        } else {
                            t.expires_at.map_or_else(
                                || "valid".to_owned(),
                                |e| format!("expires {}", utc(e)),
                            )
                        };
                        vec![t.name.clone(), t.role.to_string(), state, t.created_by.clone()]
                    })
                    .collect();
                table(&["TOKEN", "ROLE", "STATE", "CREATED BY"], &rows);
            }
        }
        TokenVerb::Revoke { name } => {
            let t: Token = client.send::<(), _>(
                "DELETE",
                &format!("/api/v1/tokens/{}", encode_component(name)),
                None,
            )?;
            if json {
                print_json(&t);
            } else {
                println!("revoked token {name}");
            }
        }
    }
    Ok(())
}
