//! A Discord-faithful mock gateway.
