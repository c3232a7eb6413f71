//! `ticket-create`: opens a ticket through an HTTP API.
//!
//! Needs `log = true`, the API's origin as the config value `api`, an
//! `http` grant allowing `POST` to the API's `/tickets`, and a `tickets`
//! credential injected as a bearer token. The token stays on the host: this
//! code only holds a handle.

use airlock_sdk::{config, credentials, http, log};

airlock_sdk::generate!({ path: "wit", world: "ticket-create" });

struct TicketCreate;

impl Guest for TicketCreate {
    fn create(ticket: Ticket) -> Result<Created, String> {
        if ticket.title.trim().is_empty() {
            return Err("the ticket needs a title".into());
        }
        let priority = match ticket.priority {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        };
        let payload = serde_json::json!({
            "title": ticket.title,
            "body": ticket.body,
            "priority": priority,
        })
        .to_string();
        let api = config::require("api").map_err(|e| e.to_string())?;
        let token = credentials::get("tickets").map_err(|e| credentials::Describe(&e).to_string())?;
        let url = format!("{}/tickets", api.trim_end_matches('/'));
        let response = http::Request::post(&url)
            .json(&payload)
            .send_with(&token)
            .map_err(|e| http::Describe(&e).to_string())?;
        if response.status != 201 {
            return Err(format!(
                "the tickets API answered {} {}: {}",
                response.status,
                response.reason,
                http::text(&response)
            ));
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("the tickets API sent invalid JSON: {e}"))?;
        let id = answer["id"].as_u64().ok_or("the tickets API sent no ticket id")?;
        let url = answer["url"].as_str().unwrap_or_default().to_string();
        log::info("ticket created", &[("id", &id.to_string()), ("priority", priority)]);
        Ok(Created { id, url })
    }
}

export!(TicketCreate);
