//! `payment-reshape`: a Strongroom function that turns a canonical payment
//! JSON body into a Stripe-style form-encoded body, detokenizing the card
//! number on the way.
//!
//! See the crate's `README.md` for the contract.

pub mod reshape;

use strongroom_guest::{
    Function, FunctionError, HttpMessage, Redaction, detokenize_one, export_function, log,
};

use crate::reshape::Payment;

/// The exported function.
pub struct PaymentReshape;

impl Function for PaymentReshape {
    fn on_request(mut msg: HttpMessage) -> Result<HttpMessage, FunctionError> {
        let payment: Payment = msg.json()?;
        payment.validate()?;
        let card_number = detokenize_one(&payment.card.number, Redaction::Plain)?;
        msg.set_form(&payment.form_pairs(&card_number));
        log::info(&format!(
            "payment-reshape: {} {} reshaped",
            payment.amount,
            payment.currency.to_ascii_lowercase()
        ));
        Ok(msg)
    }
}

export_function!(PaymentReshape);

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_guest::testing;

    #[test]
    fn on_request_produces_a_form_body() {
        testing::reset();
        testing::add_token("tok_card", "4242424242424242");
        let mut msg = HttpMessage::request("POST", "https://api.stripe.test/v1/charges");
        msg.set_json(&serde_json::json!({
            "amount": 1000, "currency": "usd",
            "card": {"number": "tok_card", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            "description": "test"
        }))
        .ok();
        let out = PaymentReshape::on_request(msg).ok();
        assert_eq!(
            out.as_ref().and_then(|m| m.header("content-type")),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            out.as_ref().map(|m| m.body.as_slice()),
            Some(
                &b"amount=1000&currency=usd&card[number]=4242424242424242&card[exp_month]=12\
                   &card[exp_year]=2030&card[cvc]=123&description=test"[..]
            )
        );
    }

    #[test]
    fn unknown_card_tokens_are_bad_requests() {
        testing::reset();
        let mut msg = HttpMessage::request("POST", "https://api.stripe.test/v1/charges");
        msg.set_json(&serde_json::json!({
            "amount": 1000, "currency": "usd",
            "card": {"number": "tok_nope", "exp_month": 12, "exp_year": 2030}
        }))
        .ok();
        assert!(matches!(
            PaymentReshape::on_request(msg),
            Err(FunctionError::BadRequest(_))
        ));
    }
}
