"""`python -m meterline.web`: the end users' web page in the foreground."""

from meterline.web.server import main

main()
