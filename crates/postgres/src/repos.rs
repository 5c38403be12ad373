//! Repositories implementing the domain ports on PostgreSQL.
