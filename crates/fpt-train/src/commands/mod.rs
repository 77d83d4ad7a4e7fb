pub mod attention;
pub mod data;
pub mod forward;
pub mod params;
pub mod pretrain;
pub mod train;
