"""The experiment folder, on this computer: what Docker would see of it (`folder`: links,
.dockerignore, the content tag), Dallinger and PsyNet experiments (`dallinger`: recognise,
configuration, the generated Dockerfile; `dallingerrelease`, `constraintsfile`, `pypi`: the
packages the image pins; `gitsources`: requirements from git; `psynetprepare`: PsyNet's
`psynet prepare`), and ~/.dallingerconfig (`dallingerconfig`)."""
