//! Reports the state keeps for the admin API: settled usage by top-level
//! scope and model (`/metrics`' spend series).

use crate::state::*;

impl State {
    /// Settled usage by top-level scope and model, bounded
    /// ([`MAX_SERIES_SCOPES`] × [`MAX_SERIES_MODELS`]).
    pub(in crate::state) fn spend_series(&self) -> Value {
        Value::Array(
            self.series
                .by_scope
                .iter()
                .flat_map(|(scope, models)| {
                    models.iter().map(move |(model, t)| {
                        Value::Map(vec![
                            ("scope", Value::str(scope.as_str())),
                            ("model", Value::str(model.as_str())),
                            ("requests", Value::Int(t.requests as i64)),
                            ("tokens", Value::Int(t.tokens as i64)),
                            ("cost", Value::Money(t.cost as i128)),
                        ])
                    })
                })
                .collect(),
        )
    }
}
