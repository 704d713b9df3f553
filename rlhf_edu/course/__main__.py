"""`python -m rlhf_edu.course --preset cpu`: run every notebook headless (`runner`)."""

from rlhf_edu.course.runner import main

raise SystemExit(main())
