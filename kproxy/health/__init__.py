"""What kproxy answers over HTTP: the proxier's own health (/healthz, /livez), the
healthCheckNodePorts of Services with externalTrafficPolicy Local, and the one small
server both use (metrics share it too)."""
