pub mod forward;
pub mod params;
