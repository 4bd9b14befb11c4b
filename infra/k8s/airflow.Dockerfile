# The Airflow image of infra/k8s/airflow-values.yaml: Airflow, the project's core and the
# airflow-tasks extra (never the stream extra: faust pins a croniter Airflow 3 cannot use), and
# the DAGs. Build from the repo root:
#   docker build -f infra/k8s/airflow.Dockerfile -t ezaigent/streams-airflow:latest .
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 . /opt/ezstream
# Editable: the code finds schemas/ and the migrations beside it in /opt/ezstream.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -e "/opt/ezstream[airflow-tasks]"
