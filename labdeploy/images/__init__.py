"""The experiment's image: its name and a build on this computer (`build`), and getting it
onto the server in one of three modes (`transfer`: built there, copied over SSH, or through a
registry with its logins, `registry`)."""
