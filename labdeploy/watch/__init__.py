"""Watching apps that run: their containers (status, logs, exec, stats, restart:
`containers`), PostgreSQL's connections (`pgactivity`), a background sampler (`sampler`),
background jobs (`jobs`); `monitor` gathers the public API."""
