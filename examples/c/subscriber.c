/* A streamfuse subscriber in C: libzmq + msgpack-c, nothing from streamfuse.
 *
 *   cc -O2 -o subscriber subscriber.c -lzmq -lmsgpackc
 *   ./subscriber tcp://127.0.0.1:5560 [COUNT] [SERVER_KEY]
 *
 * SERVER_KEY: the daemon's public key file (`streamfuse keys generate`, zmq.auth's format),
 * for an engine.output beyond loopback, which is a CURVE server; this side makes a fresh key
 * pair (a daemon with security.authorized_keys lets in only the keys listed there).
 * Receives [topic, header] multipart messages on topic prefix "result/" and prints, per
 * classification: the camera, the label and its score, the capture time of the latest
 * input and the total latency. Written from docs/protocol.md alone.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* The value under `key` in a MessagePack map, or NULL. */
static const msgpack_object *get(const msgpack_object *map, const char *key) {
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static long long as_int(const msgpack_object *o) {
    if (!o) return -1;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (long long)o->via.u64;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return (long long)o->via.i64;
    return -1;
}

static double as_float(const msgpack_object *o) {
    if (o && (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32))
        return o->via.f64;
    return -1.0;
}

/* The 40-character z85 value of `field = "..."` in a zmq.auth certificate file. */
static int read_key(const char *path, const char *field, char *out) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256], pattern[64];
    snprintf(pattern, sizeof pattern, "%s = \"", field);
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, pattern);
        if (p && strlen(p + strlen(pattern)) >= 40) {
            memcpy(out, p + strlen(pattern), 40);
            out[40] = '\0';
            found = 0;
        }
    }
    fclose(f);
    return found;
}

static void print_str(const msgpack_object *o) {
    if (o && o->type == MSGPACK_OBJECT_STR)
        printf("%.*s", (int)o->via.str.size, o->via.str.ptr);
    else
        printf("?");
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:5560";
    long count = argc > 2 ? atol(argv[2]) : -1;
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    if (argc > 3) { /* CURVE: the server's public key, and a fresh pair of our own */
        char server[41], public_key[41], secret_key[41];
        if (read_key(argv[3], "public-key", server) != 0) {
            fprintf(stderr, "cannot read a public key from %s\n", argv[3]);
            return 2;
        }
        zmq_curve_keypair(public_key, secret_key);
        zmq_setsockopt(sub, ZMQ_CURVE_SERVERKEY, server, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_PUBLICKEY, public_key, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_SECRETKEY, secret_key, 40);
    }
    if (zmq_connect(sub, endpoint) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 2;
    }
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "result/", 7);
    int timeout_ms = 20000;
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);

    long seen = 0, rejected = 0;
    while (count < 0 || seen < count) {
        zmq_msg_t parts[3];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t tmp;
            zmq_msg_init(&tmp);
            if (zmq_msg_recv(&tmp, sub, 0) < 0) {
                fprintf(stderr, "no message for %d ms: %s\n", timeout_ms, zmq_strerror(zmq_errno()));
                return 1;
            }
            more = zmq_msg_more(&tmp);
            if (n < 3) {
                parts[n] = tmp;
            } else {
                zmq_msg_close(&tmp);
            }
            n++;
        }
        if (n < 2 || n > 3) { /* protocol: [topic, header] or [topic, header, payload] */
            rejected++;
        } else {
            msgpack_unpacked up;
            msgpack_unpacked_init(&up);
            size_t off = 0;
            if (msgpack_unpack_next(&up, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), &off) !=
                    MSGPACK_UNPACK_SUCCESS ||
                as_int(get(&up.data, "v")) != 1) {
                rejected++;
            } else {
                const msgpack_object *h = &up.data;
                const msgpack_object *latency = get(h, "latency");
                print_str(get(h, "stream"));
                printf(" label=");
                print_str(get(h, "label"));
                printf(" score=%.3f seq=%lld t_capture=%lld total_ns=%lld\n",
                       as_float(get(h, "score")), as_int(get(h, "seq")), as_int(get(h, "t_capture")),
                       latency ? as_int(get(latency, "total")) : -1);
                fflush(stdout);
                seen++;
            }
            msgpack_unpacked_destroy(&up);
        }
        for (int i = 0; i < n && i < 3; i++) zmq_msg_close(&parts[i]);
    }
    fprintf(stderr, "%ld classifications, %ld rejected\n", seen, rejected);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
