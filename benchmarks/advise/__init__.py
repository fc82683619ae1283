"""``dropbp advise``: a few-minute probe that predicts, before a user trains, whether DropBP pays on their recipe
(the step cost of each candidate setting and how much of the useful gradient it keeps), with its validation."""
