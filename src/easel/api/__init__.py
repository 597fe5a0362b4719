"""HTTP only: parse, authenticate, call a service, render the envelope."""
