"""`phinetune report RUN`: one self-contained HTML page (and Markdown) describing a run."""
