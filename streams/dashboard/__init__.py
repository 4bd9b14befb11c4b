"""``ezstream dashboard``: a live web dashboard (Streamlit) over ClickHouse and the broker.

- :mod:`streams.dashboard.panels`: the panels' queries, one function per panel returning rows,
  shared by the page and the tests;
- ``streams/dashboard/app.py``: the Streamlit page, run by the process that
  :mod:`infra.local.dashboard` starts on a loopback port.
"""
