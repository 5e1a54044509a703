//! `edgeferry enroll create | list | revoke | revoke-node | reset`: the
//! operator's side of enrollment codes and enrolled nodes.

use anyhow::Result;

use super::enroll;
use crate::cli::EnrollCommand;
use crate::output;
use crate::printer::Printer;

pub fn enroll_cmd(command: EnrollCommand, out: &Printer) -> Result<()> {
    match command {
        EnrollCommand::Create {
            site_dir,
            uses,
            expires,
            names,
            upgrade,
            allow_downgrade,
            allow_skip_minor,
            json: _,
        } => {
            if !site_dir.join(super::SITE_FILE).exists() {
                anyhow::bail!(
                    "{} has no {}: write the site's parameters there first (docs/inventory.md)",
                    site_dir.display(),
                    super::SITE_FILE
                );
            }
            let ttl = enroll::parse_duration(&expires)?;
            let grant = enroll::Grant {
                kind: if upgrade {
                    enroll::CodeKind::Upgrade
                } else {
                    enroll::CodeKind::Enroll
                },
                allow_downgrade,
                allow_skip_minor,
            };
            let new = enroll::create(&site_dir, uses, ttl, names, grant)?;
            let expires_at = edgeferry_bundle::format::rfc3339_utc(new.record.expires);
            if out.json() {
                return out.data_line(&output::EnrollCreated {
                    id: &new.id,
                    code: &new.code,
                    uses,
                    expires: &expires_at,
                    names: &new.record.names,
                    kind: grant.kind,
                });
            }
            out.line(&format!("code: {}", new.code));
            out.line(&format!("id: {}", new.id));
            out.note(&format!("{} code, {uses} use(s), expires {expires_at}; shown once, stored hashed. Revoke with: edgeferry enroll revoke --site-dir {} {}", grant.kind.name(), site_dir.display(), new.id));
            Ok(())
        }
        EnrollCommand::List { site_dir, json: _ } => {
            let data: output::Enrollments = enroll::read(&site_dir)?;
            if out.json() {
                return out.data(&data);
            }
            let mut s = String::from("codes:\n");
            for c in &data.codes {
                let state = if c.revoked {
                    "revoked"
                } else if enroll::now() >= c.expires {
                    "expired"
                } else if c.uses_left == 0 {
                    "used up"
                } else {
                    "valid"
                };
                s.push_str(&format!(
                    "  {}  {}  {state}  {} used, {} left, expires {}\n",
                    c.id,
                    c.kind.name(),
                    c.uses,
                    c.uses_left,
                    edgeferry_bundle::format::rfc3339_utc(c.expires)
                ));
            }
            s.push_str("nodes:\n");
            for n in &data.nodes {
                s.push_str(&format!(
                    "  {}  {}  hostname {}  code {}  from {}\n",
                    n.name,
                    if n.revoked { "revoked" } else { "enrolled" },
                    crate::printer::node_text(&n.hostname),
                    n.code_id,
                    n.client
                ));
            }
            out.text(&s);
            Ok(())
        }
        EnrollCommand::Revoke { site_dir, id } => {
            enroll::revoke(&site_dir, &id)?;
            out.line(&format!("revoked {id}"));
            Ok(())
        }
        EnrollCommand::RevokeNode { site_dir, name } => {
            enroll::revoke_node(&site_dir, &name)?;
            out.line(&format!("revoked node {name}: its report key is refused"));
            Ok(())
        }
        EnrollCommand::Reset { site_dir, name } => {
            enroll::reset(&site_dir, &name)?;
            out.line(&format!(
                "reset node {name}: its key is gone and the name may enroll again"
            ));
            Ok(())
        }
    }
}
