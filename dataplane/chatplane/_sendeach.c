/* chatplane._sendeach: write one buffer to many sockets without the GIL.
 *
 * A large group's flush is the same frame for thousands of sockets; almost
 * all of its cost is the kernel's send (on loopback it also runs the
 * receiver's TCP stack). Done from Python each send holds the GIL and the
 * event loop; here the whole loop runs with the GIL released, so a thread of
 * its own (chatplane/gateway/bulk.py) writes while the event loop serves
 * everyone else. Each fd is a dup the caller made for this call and is
 * closed here: the connection's own fd may be closed (and its number reused)
 * by the event loop meanwhile, a dup cannot.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* send_each(fds: list[int], data: bytes) -> list[int]
 * For each fd: the bytes the kernel took (possibly fewer than len(data)), or
 * -errno (EAGAIN: none, the socket's buffer is full). Every fd is closed. */
static PyObject *
send_each(PyObject *self, PyObject *args)
{
    PyObject *fds_obj;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O!y*:send_each", &PyList_Type, &fds_obj, &data))
        return NULL;

    Py_ssize_t n = PyList_GET_SIZE(fds_obj);
    int *fds = PyMem_Malloc(sizeof(int) * (n ? n : 1));
    Py_ssize_t *sent = PyMem_Malloc(sizeof(Py_ssize_t) * (n ? n : 1));
    if (fds == NULL || sent == NULL) {
        PyMem_Free(fds);
        PyMem_Free(sent);
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(fds_obj, i));
        if (fd == -1 && PyErr_Occurred()) {
            PyMem_Free(fds);
            PyMem_Free(sent);
            PyBuffer_Release(&data);
            return NULL;
        }
        fds[i] = (int)fd;
    }

    const char *buf = data.buf;
    Py_ssize_t len = data.len;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t done = 0;
        while (done < len) {
            ssize_t r = send(fds[i], buf + done, (size_t)(len - done), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (r > 0) {
                done += r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (done == 0)
                done = (r < 0) ? -(Py_ssize_t)errno : 0;
            break; /* full (EAGAIN after a partial write) or failed */
        }
        sent[i] = done;
        close(fds[i]);
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&data);
    PyMem_Free(fds);
    PyObject *out = PyList_New(n);
    if (out != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = PyLong_FromSsize_t(sent[i]);
            if (v == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, v);
        }
    }
    PyMem_Free(sent);
    return out;
}

/* dup_each(fds: list[int]) -> list[int]
 * A close-on-exec dup of each fd (-errno where dup failed), with the GIL held:
 * many cheap syscalls, each of which would otherwise let another thread take
 * the GIL from the event loop. */
static PyObject *
dup_each(PyObject *self, PyObject *arg)
{
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "dup_each: a list of fds");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(arg);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(arg, i));
        if (fd == -1 && PyErr_Occurred()) {
            for (Py_ssize_t j = 0; j < i; j++) { /* give back what was taken */
                long d = PyLong_AsLong(PyList_GET_ITEM(out, j));
                if (d >= 0)
                    close((int)d);
            }
            Py_DECREF(out);
            return NULL;
        }
        int d = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
        PyObject *v = PyLong_FromLong(d >= 0 ? d : -errno);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"dup_each", dup_each, METH_O,
     "dup_each(fds) -> list of close-on-exec dups (or -errno), GIL held"},
    {"send_each", send_each, METH_VARARGS,
     "send_each(fds, data) -> list of bytes sent (or -errno) per fd; closes every fd"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chatplane._sendeach",
    "Write one buffer to many sockets with the GIL released.", -1, methods,
};

PyMODINIT_FUNC
PyInit__sendeach(void)
{
    return PyModule_Create(&module);
}
