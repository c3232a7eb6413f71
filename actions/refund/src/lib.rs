//! `refund`: the example action of airlock's policy language. It holds no
//! capability; the point is who may call it with which arguments, which
//! the Cedar policies in `examples/refunds` decide before it runs.

airlock_sdk::generate!({ path: "wit", world: "refund" });

struct Refund;

impl Guest for Refund {
    fn issue(amount: u64, account: String, note: Option<String>) -> Result<String, String> {
        if amount == 0 {
            return Err("a refund needs an amount above 0".into());
        }
        if account.is_empty() || !account.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("{account:?} is not an account id"));
        }
        let noted = note.map_or(0, |n| n.len());
        Ok(format!("refund-{account}-{amount}-{noted}"))
    }
}

export!(Refund);
