"""The web console (issue 20): a page listing jobs with live progress, one job's step
timeline, children, effects and history, and buttons to cancel, redrive, pause and resume.

`jobstate console` serves it locally (`server.start`); `handlers/status_api.py` serves
the same page (`page.PAGE`) and answers (`data`) behind its IAM auth and grants.
"""
