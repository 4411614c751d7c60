//! The canonical payment shape and its Stripe-style form encoding.
//!
//! Pure code with no host calls, so it is unit-tested natively.

use std::collections::BTreeMap;

use serde::Deserialize;
use strongroom_guest::FunctionError;

/// A payment in the vault's canonical JSON shape.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Amount in the currency's smallest unit (e.g. cents).
    pub amount: u64,
    /// ISO 4217 currency code, any case.
    pub currency: String,
    /// The card, with its number tokenized.
    pub card: Card,
    /// Free-text description.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form string metadata, sent as `metadata[key]=value`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Card details of a [`Payment`].
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// The token of the card number (never the number itself).
    pub number: String,
    /// Expiry month, 1 to 12.
    pub exp_month: u8,
    /// Expiry year, four digits.
    pub exp_year: u16,
    /// The card verification code, if sent.
    #[serde(default)]
    pub cvc: Option<String>,
}

impl Payment {
    /// Checks the fields that the upstream would reject anyway, so the
    /// error is clear and no detokenization is spent on a doomed request.
    ///
    /// # Errors
    ///
    /// [`FunctionError::BadRequest`] naming the offending field.
    pub fn validate(&self) -> Result<(), FunctionError> {
        let bad = |text: &str| Err(FunctionError::BadRequest(text.to_owned()));
        if self.amount == 0 {
            return bad("`amount` must be positive");
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return bad("`currency` must be a three-letter ISO 4217 code");
        }
        if !(1..=12).contains(&self.card.exp_month) {
            return bad("`card.exp_month` must be 1 to 12");
        }
        if !(1000..=9999).contains(&self.card.exp_year) {
            return bad("`card.exp_year` must have four digits");
        }
        if self.card.number.is_empty() {
            return bad("`card.number` must be a token");
        }
        Ok(())
    }

    /// The form pairs of the upstream request, in a stable order, with
    /// `card_number` (the detokenized number) in place of the token.
    pub fn form_pairs(&self, card_number: &str) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("amount".to_owned(), self.amount.to_string()),
            ("currency".to_owned(), self.currency.to_ascii_lowercase()),
            ("card[number]".to_owned(), card_number.to_owned()),
            (
                "card[exp_month]".to_owned(),
                self.card.exp_month.to_string(),
            ),
            ("card[exp_year]".to_owned(), self.card.exp_year.to_string()),
        ];
        if let Some(cvc) = &self.card.cvc {
            pairs.push(("card[cvc]".to_owned(), cvc.clone()));
        }
        if let Some(description) = &self.description {
            pairs.push(("description".to_owned(), description.clone()));
        }
        pairs.extend(
            self.metadata
                .iter()
                .map(|(key, value)| (format!("metadata[{key}]"), value.clone())),
        );
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strongroom_guest::form_encode;

    fn payment() -> Payment {
        let json = r#"{"amount": 1000, "currency": "USD",
            "card": {"number": "tok_card", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            "description": "Order #42", "metadata": {"order": "42"}}"#;
        serde_json::from_str(json).unwrap_or_else(|err| panic!("fixture: {err}"))
    }

    #[test]
    fn encodes_stripe_style() {
        let payment = payment();
        assert_eq!(payment.validate(), Ok(()));
        assert_eq!(
            form_encode(&payment.form_pairs("4242424242424242")),
            "amount=1000&currency=usd&card[number]=4242424242424242&card[exp_month]=12\
             &card[exp_year]=2030&card[cvc]=123&description=Order+%2342&metadata[order]=42"
        );
    }

    #[test]
    fn rejects_bad_fields() {
        let mut bad = payment();
        bad.currency = "dollars".into();
        assert!(bad.validate().is_err());
        let mut bad = payment();
        bad.card.exp_month = 13;
        assert!(bad.validate().is_err());
        let unknown = r#"{"amount": 1, "currency": "usd", "card": {"number": "t", "exp_month": 1,
            "exp_year": 2030, "pin": "0000"}}"#;
        assert!(serde_json::from_str::<Payment>(unknown).is_err());
    }
}
