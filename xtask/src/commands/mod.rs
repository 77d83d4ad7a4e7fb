pub mod bench;
pub mod data;
pub mod fidelity;
pub mod regress;
pub mod reproduce;
pub mod setup;
pub mod test;
