//! Health checks with real servers in the lab (issue: health checks and backend lifecycle).
mod support;
