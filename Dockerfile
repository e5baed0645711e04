# toprouter-proxy: a small, non-root image for running the proxy as a sidecar or a gateway.
#
#   docker build -t toprouter-proxy .
#   docker run --rm -p 8787:8787 \
#     -e TOPROUTER_API_KEY \
#     -e TOPROUTER_PROXY_CONFIG=/config/config.yaml \
#     -v "$PWD/config.example.yaml:/config/config.yaml:ro" \
#     toprouter-proxy
#
# Configuration is mounted, never baked in: mount a YAML file (e.g. at /config/config.yaml) and point
# TOPROUTER_PROXY_CONFIG at it. Without one the built-in defaults apply. Secrets such as
# TOPROUTER_API_KEY come from the environment only; the config file must not hold them.
# Team mode's embedded store is a file: mount a volume on /data (-v toprouter-data:/data) and set
# team.storeUrl: sqlite:/data/toprouter-proxy.db in the mounted config.
#
# test/dockerfile.test.ts parses this file and replays the runtime stage (its COPY, RUN, ENV, CMD and
# HEALTHCHECK) against `npm pack` output, and replays the prod-deps stage it copies node_modules
# from, so keep every replayed RUN line runnable with `sh -c` from the stage's WORKDIR (no absolute
# paths outside it).

ARG NODE_VERSION=24

# ---- build: every dependency, then TypeScript compiled to dist/ ----
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# tsc needs no install script: better-sqlite3's binding is built in prod-deps, esbuild is dev-only.
RUN npm ci --ignore-scripts
COPY tsconfig*.json ./
COPY src/ ./src/
RUN npm run build

# ---- prod-deps: production dependencies only, with their install scripts ----
# better-sqlite3 is a native module: its install script downloads a prebuilt binding for this Node
# (prebuild-install) or, where there is none, compiles one with node-gyp, which needs python3, make
# and g++ (package.json's allowScripts approves that script under npm's install-script policy). The
# toolchain stays in this stage; the runtime stage copies only the finished node_modules, built on the
# same base image, so the binding matches the runtime's Node.
FROM node:${NODE_VERSION}-slim AS prod-deps
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
# An empty directory that becomes the runtime's /data (see below).
RUN mkdir data

# ---- runtime: production dependencies and the compiled output only, no compilers ----
FROM node:${NODE_VERSION}-slim
# HOST=0.0.0.0 so the proxy is reachable from other containers; outside Docker it defaults to 127.0.0.1.
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8787
WORKDIR /app
# package.json: main.ts reads the version from it.
COPY package.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# /data holds team mode's store (team.storeUrl: sqlite:/data/toprouter-proxy.db). It is owned by
# node, so a fresh named volume mounted on it is writable by node too; /app is not.
COPY --from=prod-deps --chown=node:node /app/data /data
# The official node images ship an unprivileged "node" user (uid 1000).
USER node
EXPOSE 8787
# Liveness via node itself: slim images have no curl or wget. /healthz never touches the upstream.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8787)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form, and node directly rather than `npm start` or a shell: node is then PID 1 and receives
# SIGTERM/SIGINT itself, so it can drain in-flight requests and streams and exit 0. A shell form
# (`sh -c ...`) or npm in between would swallow or delay the signal, and `npm start` would also run
# the prestart build, which needs devDependencies that this image does not have.
CMD ["node", "dist/main.js"]
