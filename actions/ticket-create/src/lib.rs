//! `ticket-create`: opens a ticket through an HTTP API.
//!
//! Needs `log = true`, the API's origin as the config value `api`, an
//! `http` grant allowing `POST` to the API's `/tickets`, and a `tickets`
//! credential injected as a bearer token. The token stays on the host: this
//! code only holds a handle.

use airlock_sdk::{config, credentials, http, log};
use serde::{Deserialize, Serialize};

airlock_sdk::generate!({ path: "wit", world: "ticket-create" });

/// What the tickets API takes.
#[derive(Serialize)]
struct NewTicket<'a> {
    title: &'a str,
    body: &'a str,
    priority: &'a str,
}

/// What it answers.
#[derive(Deserialize)]
struct Answer {
    id: u64,
    #[serde(default)]
    url: String,
}

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
        let api = config::require("api").map_err(|e| e.to_string())?;
        let token = credentials::get("tickets").map_err(|e| e.to_string())?;
        let answer: Answer = http::Request::post(&format!("{}/tickets", api.trim_end_matches('/')))
            .json(&NewTicket {
                title: &ticket.title,
                body: &ticket.body,
                priority,
            })
            .and_then(|request| request.send_with(&token))
            .and_then(http::Response::error_for_status)
            .and_then(|response| response.json())
            .map_err(|e| format!("the tickets API: {e}"))?;
        log::info(
            "ticket created",
            &[("id", &answer.id.to_string()), ("priority", priority)],
        );
        Ok(Created {
            id: answer.id,
            url: answer.url,
        })
    }
}

export!(TicketCreate);
