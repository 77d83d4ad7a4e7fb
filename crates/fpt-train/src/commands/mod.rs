pub mod attention;
pub mod bench;
pub mod data;
pub mod forward;
pub mod params;
pub mod pretrain;
pub mod train;
