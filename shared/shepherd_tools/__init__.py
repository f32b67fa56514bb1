"""Local tooling around shepherd: the command line, the local stack, replays, the Buildbucket
simulator and the packager. None of it is deployed: the functions' archive holds only the
`shepherd` package."""
