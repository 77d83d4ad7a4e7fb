pub mod data;
pub mod reproduce;
pub mod setup;
pub mod test;
