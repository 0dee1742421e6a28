"""The server and its shared stack: where things live (`layout`), PostgreSQL and Caddy in
~/dallinger (`stack`, `caddy`), Compose v1 or v2 (`compose`), SQL through `docker exec`
(`psql`), each app's role and database (`database`) and connection pooler (`pooler`), the
locks that keep two operations apart (`locks`), and whether a server can host experiments
(`readiness`)."""
