"""The browser dashboard served by the API process (issue 15): see docs/dashboard.md."""
