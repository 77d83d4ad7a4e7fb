pub mod data;
pub mod forward;
pub mod params;
