//! Faults across real containers: the compose deployment (`docker-compose.yml`, the
//! images from `./scripts/images`) under kills, partitions, restarts and scaling, driven
//! from the host with the Rust client. These tests need Docker and fail (never skip)
//! without it. They run one at a time (a lock in `support`): each starts its own compose
//! project, and their figures would mean little with another project on the same cores.
//!
//! Every test prints its figures (`--nocapture` shows them).

mod support;

mod broker;
mod executors;
mod neighbour;
mod operate;
mod scaling;
mod swarm;
