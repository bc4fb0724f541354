//! ralph-ldap
