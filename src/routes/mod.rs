//! One module per resource; each exposes `routes(state)` as one boxed filter.

pub mod ops;
pub mod users;
