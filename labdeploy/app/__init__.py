"""An experiment's life on a server: deploy, update and destroy it, list the apps.

`deploy` is the procedure (a `Deploy` with one method per step and each step's undo);
`options` what it can be told (`DeployOptions`, shared by the API, the CLI and the panel);
`facts` what the server holds about the app beforehand; `configuration` its configuration
and secrets; `appcompose` its compose file; `assets` its files; `webprobe` asking its web
process over the SSH connection; `settle` waiting for its processes to start; `history` its
deploy.json and history; `apps` the apps on a server, a tunnel to one, and `destroy`;
`finalexport` what destroy saves first; `appdata` the data a destroyed app leaves.
"""
