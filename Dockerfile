# PyEdge's one image: every service, the edge-server and Mosquitto; the command picks which
# (`pyedge run` by default: solo mode in one container). One image per machine type:
#
#   docker build --target pyedge --build-arg MACHINE_TYPE=rpi -t pyedge:0.1.0-rpi .
#
# MACHINE_TYPE (pc_linux, pc_win, mac, rpi) becomes EDGE_MACHINE_TYPE, which picks the
# device-service's default sensors. The base is the official multi-arch Python image
# (Debian 12): Docker pulls its arm64 or 32-bit arm variant on a Raspberry Pi, its amd64
# or arm64 one on a PC or a Mac. It replaces the balenalib Raspberry Pi images.
# Classic builder and BuildKit alike: no BuildKit-only syntax.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/pyedge
WORKDIR /src
COPY pyproject.toml ./
# The dependencies alone, in a layer of their own: a code change does not reinstall them.
# Wheels exist for amd64 and arm64; on 32-bit arm a few (cffi, PyYAML, argon2) are built
# from source, so only then are a compiler and headers installed (in this stage only).
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && { /opt/pyedge/bin/pip install -r requirements.txt \
         || { apt-get update \
              && apt-get install -y --no-install-recommends gcc libc6-dev libffi-dev libyaml-dev \
              && /opt/pyedge/bin/pip install -r requirements.txt; }; }
COPY README.md ./
COPY pyedge pyedge
COPY edge_server edge_server
COPY device_service device_service
COPY container_manager container_manager
COPY custom_service custom_service
COPY media_player media_player
COPY alerts alerts
RUN /opt/pyedge/bin/pip install --no-deps . \
    && /opt/pyedge/bin/pyedge --version

FROM ${BASE_IMAGE} AS pyedge
# Debian's Mosquitto (2.0.11 on bookworm), for the bundle's mqtt container and solo mode.
# The mount points exist, owned by the user, so that the volumes mounted there are too;
# /run/pyedge/credentials stays root's: only volumes (mount points) appear in it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin pyedge \
    && mkdir -p /data/tls /run/pyedge/hub /run/pyedge/mqtt /run/pyedge/credentials \
    && chown pyedge:pyedge /data /data/tls /run/pyedge/hub /run/pyedge/mqtt
COPY --from=build /opt/pyedge /opt/pyedge
COPY mqtt/mosquitto.conf /etc/pyedge/mosquitto.conf
# From here on the machine types differ: the layers above are shared by all four.
ARG MACHINE_TYPE=pc_linux
RUN case "$MACHINE_TYPE" in pc_linux|pc_win|mac|rpi) ;; \
      *) echo "MACHINE_TYPE must be pc_linux, pc_win, mac or rpi, not '$MACHINE_TYPE'" >&2; exit 1 ;; \
    esac
ENV PATH=/opt/pyedge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGE_DATA_DIR=/data \
    EDGE_MQTT_CONFIG=/etc/pyedge/mosquitto.conf \
    EDGE_MACHINE_TYPE=${MACHINE_TYPE}
LABEL org.opencontainers.image.title="PyEdge" \
      org.opencontainers.image.description="Flask microservices for IoT edge devices" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.pyedge.machine-type=${MACHINE_TYPE}
USER pyedge
WORKDIR /data
EXPOSE 8000 1883 8883
# /api/health answers 200 once the bus is connected and every service is ok.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-I", "-m", "edge_server.healthcheck"]
ENTRYPOINT ["pyedge"]
CMD ["run"]

# The media-player's image: the same, with Debian's mpv (about 100 MB more), which only
# that service needs. `--target pyedge` builds the image above without it; the compose
# bundle builds both (`target:` in docker-compose.yml).
FROM pyedge AS media-player
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends mpv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
USER pyedge
